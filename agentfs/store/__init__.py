"""Where state lives. All SQL of agentfs is in this package, one module per
table group, so that another backend (PostgreSQL) replaces one package."""
