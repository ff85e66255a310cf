"""Ready-made data sources: the public sets top GUIE teams trained on, by name.

A source entry `{preset: gldv2}` in `data.sources` expands to the preset's fields; any other key
in the entry overrides the preset's value (`{preset: gldv2, max_classes: 5000}`), and `name`
defaults to the preset's name. Each preset records where the data comes from and its licence
and terms; `guie download` prints them before fetching anything.

Layouts marked "as published" follow the dataset's documented layout; if a mirror packs its
files differently, override `root`, `csv`, `image` or `label` in the entry.
"""

from __future__ import annotations

from typing import Any

# The domain names are the 130k set's folder names, so per-domain metrics line up across sources.
PRESETS: dict[str, dict[str, Any]] = {
    "guie-130k": {
        # 11 folders (apparel, artwork, cars, dishes, furniture, illustrations, landmark, meme,
        # packaged, storefronts, toys) of 512x512 images plus train.csv (label,image_name):
        # domain labels only, so it fits the PCA projection, as the 6th-place team did.
        "type": "kaggle_dataset",
        "dataset": "rhtsingh/130k-images-512x512-universal-image-embeddings",
        "role": "pca",
        "domain": "{parent}",
        "homepage": "https://www.kaggle.com/datasets/rhtsingh/130k-images-512x512-universal-image-embeddings",
        "terms": "Kaggle dataset shared for this competition; its licence is the one on its Kaggle page "
        "(not checked by guie) and the images stay under their owners' terms. Used here only to fit PCA.",
    },
    "gldv2": {
        # Google Landmarks v2 as the Landmark Recognition 2021 competition ships it (~1.5M images):
        # train.csv (id,landmark_id) and train/<a>/<b>/<c>/<id>.jpg
        "type": "kaggle_competition",
        "competition": "landmark-recognition-2021",
        "csv": "train.csv",
        "image": "train/{id[0]}/{id[1]}/{id[2]}/{id}.jpg",
        "label": "{landmark_id}",
        "domain": "landmark",
        "homepage": "https://www.kaggle.com/competitions/landmark-recognition-2021",
        "terms": "Kaggle competition data: accept the competition's rules on Kaggle first (the download is "
        "refused until you do) and use it under them. GLDv2 annotations: CC BY 4.0 (Google); images: "
        "Wikimedia Commons, each under its own licence.",
    },
    "products10k": {
        # Downloaded by hand (the terms must be accepted on the site), unpacked so that train.csv
        # (name,class,group) and train/ sit in the folder.
        "type": "folder",
        "path": "data/external/products10k",
        "csv": "train.csv",
        "image": "train/{name}",
        "label": "{class}",
        "domain": "packaged",
        "homepage": "https://products-10k.github.io/",
        "terms": "Products-10K (JD.com): free for non-commercial research and educational purposes only; "
        "download it from the homepage after accepting its terms.",
    },
    "stanford-online-products": {
        # As published: Ebay_train.txt ("image_id class_id super_class_id path", space-separated)
        # beside the <category>_final/ folders; one class per eBay product.
        "type": "folder",
        "path": "data/external/Stanford_Online_Products",
        "csv": "Ebay_train.txt",
        "csv_delimiter": " ",
        "image": "{path}",
        "label": "{class_id}",
        "domain": "furniture",
        "homepage": "https://cvgl.stanford.edu/projects/lifted_struct/",
        "terms": "Stanford Online Products (Song et al., CVPR 2016): research dataset of images crawled "
        "from eBay; check the terms on its homepage before any use beyond research.",
    },
    "food101": {
        # Food-101 mirrored on Kaggle (the 6th-place team's link); one folder per dish.
        "type": "kaggle_dataset",
        "dataset": "srujanesanakarra/food101",
        "label": "{parent}",
        "domain": "dishes",
        "homepage": "https://www.kaggle.com/datasets/srujanesanakarra/food101",
        "terms": "Food-101 (Bossard et al., ECCV 2014): images from foodspotting.com; any use beyond "
        "scientific fair use must be agreed with the picture owners (Foodspotting terms).",
    },
    "storefronts146": {
        # Storefronts-146 on Kaggle (the 6th-place paper's footnote); one folder per storefront.
        "type": "kaggle_dataset",
        "dataset": "kerrit/storefront-146",
        "label": "{parent}",
        "domain": "storefronts",
        "homepage": "https://www.kaggle.com/datasets/kerrit/storefront-146",
        "terms": "Storefronts-146: licence as stated on its Kaggle page (not checked by guie); "
        "the images stay under their owners' terms.",
    },
    "fashion200k": {
        # Fashion200k mirrored on Kaggle (the 6th-place team's link); as published, each product's
        # photos sit in a folder named after the product id.
        "type": "kaggle_dataset",
        "dataset": "mayukh18/fashion200k-dataset",
        "label": "{parent}",
        "domain": "apparel",
        "homepage": "https://www.kaggle.com/datasets/mayukh18/fashion200k-dataset",
        "terms": "Fashion200k (Han et al., ICCV 2017): research dataset; licence as stated on the Kaggle "
        "mirror's page (not checked by guie).",
    },
}

# Disk a preset takes once fetched, in GiB, where it is recorded: its archive is kept in the
# download cache (data/downloads/<name>/) beside the unpacked copy in data/raw/<name>/ (JPEGs do
# not compress, so about as big). `guie doctor` adds them up against the free space.
DISK_GIB: dict[str, float] = {
    "gldv2": 200,  # unpacks to ~100 GiB (params/full-recipe.yaml's data.download caps), plus its archive
}


def expand_preset(entry: Any) -> Any:
    """`{preset: name, **overrides}` -> the preset's fields with the overrides applied."""
    if not isinstance(entry, dict) or "preset" not in entry:
        return entry
    overrides = dict(entry)
    name = overrides.pop("preset")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return {"name": name, **PRESETS[name], **overrides}
