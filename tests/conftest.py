"""Shared test setup: make the repo importable and keep Rust panics (caught by the decoder) short."""

from __future__ import annotations

import os

os.environ.setdefault("RUST_BACKTRACE", "0")
