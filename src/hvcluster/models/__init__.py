"""The data model of a cluster: frozen pydantic models, lifecycles and the error tree.

This layer imports nothing else of ours.
"""
