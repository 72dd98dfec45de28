-- One database per service, never shared (database-per-service).
CREATE DATABASE orders OWNER feedline;
CREATE DATABASE customers OWNER feedline;
