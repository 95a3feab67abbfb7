/* sdnotify.c: placeholder, being written. */
