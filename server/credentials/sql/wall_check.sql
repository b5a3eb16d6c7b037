-- Masked columns the new session role could still read, by any path: its
-- grant roles, roles they inherit, PUBLIC, pg_read_all_data. Must be none.
SELECT w.s || '.' || w.t || '.' || w.col
FROM unnest(%(schemas)s::text[], %(tables)s::text[], %(columns)s::text[]) AS w(s, t, col)
JOIN pg_namespace n ON n.nspname = w.s
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = w.col AND NOT a.attisdropped
WHERE has_column_privilege(%(role)s::name, c.oid, a.attnum, 'SELECT')
ORDER BY 1
