"""The realtime collector: Kafka consumer group → validated rows → per-minute Parquet per domain."""
