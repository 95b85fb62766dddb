-- Which ACME challenges each Gateway has confirmed (space-separated challenge ids, as in the
-- snapshot's `acme.ids()`), next to the replica that holds its session: the leader asks the CA
-- to validate only once the Gateways on every replica are ready to answer, not only its own.
ALTER TABLE node_presence ADD COLUMN acme_ids TEXT NOT NULL DEFAULT '';
