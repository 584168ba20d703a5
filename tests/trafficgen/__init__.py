"""Tests of the traffic generator."""
