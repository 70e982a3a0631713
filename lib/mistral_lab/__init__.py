"""mistral-lab: a Mistral open-weight model from nothing to a served, queried and benchmarked endpoint, and back."""

__version__ = "0.1.0"
