"""The web dashboard every agent serves at ``/`` beside its API (see web/app.py)."""
