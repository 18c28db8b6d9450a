"""Fixtures of the labels tests: the offline Sentence-BERT model (loaded once), a small bundle of real
photos with synthetic cluster maps, and a realistic simulated label export over it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sbert():
    """all-MiniLM-L6-v2 from the offline package (about 5 s to load: once per session)."""
    from featurelens.labels.embed import SentenceEmbedder

    emb = SentenceEmbedder()
    emb.encode(["warm up"])
    return emb


@pytest.fixture(scope="session")
def label_bundle(tmp_path_factory):
    from featurelens.labels.synthetic import build_photo_bundle

    return build_photo_bundle(tmp_path_factory.mktemp("labels") / "bundle")


@pytest.fixture(scope="session")
def export(label_bundle):
    from featurelens.labels.synthetic import simulated_export

    return simulated_export(label_bundle, players=6, seed=0)


@pytest.fixture(scope="session")
def processed(label_bundle, export, sbert):
    from featurelens.labels.pipeline import process_labels

    return process_labels(label_bundle, export, embedder=sbert)
