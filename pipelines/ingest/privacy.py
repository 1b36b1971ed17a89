"""Identifier-looking values (CONTRACT.md rule 2): e-mail addresses and phone numbers."""

from __future__ import annotations

import re

import polars as pl

MASK = "***"
_PHONE_CHARS = r"^[0-9 +\-.()]+$"
_PHONE_RE = re.compile(_PHONE_CHARS)
#: the same test as one pattern: only those characters, with at least 9 digits among them
#: (one regex pass; counting digits in every cell cost more than all other checks together)
_PHONE = r"^[ +\-.()]*(?:[0-9][ +\-.()]*){9,}$"


def looks_like_email(expr: pl.Expr) -> pl.Expr:
    return expr.str.contains("@", literal=True)


def looks_like_phone(expr: pl.Expr) -> pl.Expr:
    """Only digits, spaces, +, -, ., (, ) and at least 9 digits."""
    return expr.str.contains(_PHONE)


def looks_like_identifier(expr: pl.Expr) -> pl.Expr:
    return looks_like_email(expr) | looks_like_phone(expr)


def mask_expr(expr: pl.Expr) -> pl.Expr:
    return pl.when(looks_like_identifier(expr).fill_null(False)).then(pl.lit(MASK)).otherwise(expr)


def mask_value(value: str | None) -> str | None:
    """The scalar twin of :func:`mask_expr`, for the few rows parsed outside polars."""
    if value is None:
        return None
    if "@" in value or (_PHONE_RE.match(value) and sum(ch.isdigit() for ch in value) >= 9):
        return MASK
    return value
