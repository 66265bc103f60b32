"""Importers of other federated-learning frameworks' job files into xfed config folders."""
