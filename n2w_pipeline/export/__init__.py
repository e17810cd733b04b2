"""Wide tables out of PostgreSQL: Parquet files and ClickHouse tables, one ship-day at a time."""
