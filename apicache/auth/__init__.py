"""Who may call: api-keys, bearer tokens verified against a JSON Web Key Set, and the tenant claim."""
