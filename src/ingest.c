/* ingest.c: placeholder, being written. */
