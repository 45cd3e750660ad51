"""Converters from public dataset formats into the danceopd dataset CSV."""
