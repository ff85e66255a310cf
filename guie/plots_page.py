"""The page `dvc plots show` writes, drawn offline.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so without network the training
curves and the other data plots come out blank. `.dvc/config` points DVC at a page template
(`plots.html_template`) that holds the three libraries inline instead: `.dvc/plots-page.html`,
committed, written by this module from the bundle vl-convert-python makes of them
(`vl_convert.javascript_bundle()`; vega, vega-lite and vega-embed are BSD-3-Clause).

Regenerate it (e.g. for a newer vega-lite):
    pip install vl-convert-python==1.9.0.post1 && python -m guie.plots_page
"""

from __future__ import annotations

import sys
from pathlib import Path

from guie.atomic import write_text
from guie.errors import GuieError
from guie.layout import Layout

VL_CONVERT = "1.9.0.post1"  # the vl-convert-python whose bundle the committed page holds
# DVC fills these; any other text of the template is kept as it is
PLACEHOLDERS = ("{refresh_tag}", "{plot_divs}")

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite and vega-embed, inline (bundled by vl-convert-python VL_CONVERT; BSD-3-Clause):
         drawn without network. Written by `python -m guie.plots_page`. -->
    <script>
BUNDLE
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page(bundle: str) -> str:
    """The page template holding `bundle` (JavaScript that defines window.vegaEmbed) inline."""
    for placeholder in (*PLACEHOLDERS, "{scripts}"):
        if placeholder in bundle:
            raise GuieError(f"the vega bundle contains {placeholder}, which DVC would replace: cannot inline it")
    inline = bundle.replace("</script", "<\\/script")  # the HTML parser would end the script there
    return TEMPLATE.replace("VL_CONVERT", VL_CONVERT).replace("BUNDLE", inline)


def vega_bundle() -> str:
    try:
        import vl_convert
    except ImportError:
        raise GuieError(f"no vl_convert here: `pip install vl-convert-python=={VL_CONVERT}` first") from None
    return vl_convert.javascript_bundle()


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else Layout(Path(".")).plots_page
    write_text(out, page(vega_bundle()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
