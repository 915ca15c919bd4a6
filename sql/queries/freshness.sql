-- Title: Data freshness
-- Question: When did the warehouse last load, and how recent is the data it holds?
-- Reading: The time of the last load, the start of the newest ingest run it contains (the data
--   is as fresh as that), the number of loads so far and the rows they loaded.
-- Chart: none
SELECT MAX(loaded_at) AS last_loaded_at,
       MAX(ingest_started_at) AS data_as_of,
       COUNT(*) AS loads,
       COALESCE(SUM(rows_loaded), 0) AS rows_loaded
FROM etl.loaded_manifest
