"""Tests for rtp/: one test module per source module."""
