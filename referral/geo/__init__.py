"""Geography: the geocoder chain (offline gazetteer, then an optional geopy provider)."""
