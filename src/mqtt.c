/* mqtt.c: placeholder, being written. */
