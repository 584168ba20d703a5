"""Embedded servers (Kafka-protocol broker, S3 and GCS emulators) for tests, benchmarks and the demo."""
