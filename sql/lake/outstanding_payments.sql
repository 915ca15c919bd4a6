-- The dashboard's "Outstanding payments by age" (sql/queries/08_outstanding_payments.sql) in
-- Athena's SQL (Trino), unfiltered, over the lake's tables; DuckDB runs it as it is.
-- What changed from the PostgreSQL file, and nothing else:
--   `AS MATERIALIZED` dropped (PostgreSQL's planner hint; Trino has none),
--   `as_of.day - payment_date` (PostgreSQL's date subtraction) is date_diff('day', payment_date, as_of.day),
--   `(ARRAY[...])[band + 1]` is a CASE on band (the same labels).
WITH payments AS (SELECT f.*, c.currency_code FROM fact_payment_current AS f JOIN dim_currency AS c ON c.currency_id = f.currency_id),
as_of AS (
    SELECT MAX(last_updated_date) AS day FROM fact_payment WHERE NOT is_deleted
),
aged AS (
    SELECT payments.*,
           CASE
               WHEN payment_date >= as_of.day THEN 0
               WHEN date_diff('day', payment_date, as_of.day) <= 30 THEN 1
               WHEN date_diff('day', payment_date, as_of.day) <= 60 THEN 2
               WHEN date_diff('day', payment_date, as_of.day) <= 90 THEN 3
               ELSE 4
           END AS band
    FROM payments
    CROSS JOIN as_of
    WHERE NOT paid
)
SELECT CASE band
           WHEN 0 THEN 'not yet due'
           WHEN 1 THEN '1-30 days overdue'
           WHEN 2 THEN '31-60 days overdue'
           WHEN 3 THEN '61-90 days overdue'
           ELSE 'over 90 days overdue'
       END AS age_band,
       currency_code,
       COUNT(*) AS payments,
       SUM(payment_amount) AS amount,
       MIN(payment_date) AS earliest_agreed_date
FROM aged
GROUP BY band, currency_code
ORDER BY band, currency_code
