"""scvi-tools model classes (none in this release)."""

__all__: list[str] = []
