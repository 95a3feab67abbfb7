/* outbox.c: placeholder, being written. */
