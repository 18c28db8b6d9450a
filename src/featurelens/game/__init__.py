"""The labelling game ("Deep Reveal"): people name what each cluster map of a bundle shows.

* :mod:`featurelens.game.app` — ``create_app(database_url, admin_token=...)``, the FastAPI app;
* :mod:`featurelens.game.store` — import, assignment, rounds, scoring, export (the service layer);
* :mod:`featurelens.game.masks` — top-q % soft-edged reveal masks;
* :mod:`featurelens.game.scoring` — points and the pluggable label matcher;
* :mod:`featurelens.game.simulate` — simulated players driving the real HTTP API.
"""
