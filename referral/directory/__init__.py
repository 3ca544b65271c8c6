"""The clinic directory: clinics, their locations and specialties, search and nearest."""
