/* payload.c: placeholder, being written. */
