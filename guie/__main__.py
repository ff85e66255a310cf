from guie.cli import main

main()
