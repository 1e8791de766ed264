"""Sharing captures: export and import (exchange), redaction, merging."""
