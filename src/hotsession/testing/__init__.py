"""Test instruments for hotsession (never imported by the product)."""
