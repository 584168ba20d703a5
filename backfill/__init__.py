"""The backfill Job: loads the historical Kafka offsets once, into the collector's layout."""
