-- Title: Outstanding payments by age
-- Question: How much is still unpaid, and how late is it?
-- Reading: Payments whose latest version is not paid, banded by days past their agreed payment
--   date (not yet due, 1-30, 31-60, 61-90, over 90 days overdue), per currency. Age is counted
--   to the newest payment update in the warehouse (not a deletion, which is stamped when it was
--   detected): today on a live system, and a replayed or demo history is aged on its own clock.
-- Chart: bar x=age_band y=amount color=currency_code
\ir filter.psql
WITH payments AS (:filtered_payments),
as_of AS MATERIALIZED (
    SELECT MAX(last_updated_date) AS day FROM fact_payment WHERE NOT is_deleted
),
aged AS (
    SELECT payments.*,
           CASE
               WHEN payment_date >= as_of.day THEN 0
               WHEN as_of.day - payment_date <= 30 THEN 1
               WHEN as_of.day - payment_date <= 60 THEN 2
               WHEN as_of.day - payment_date <= 90 THEN 3
               ELSE 4
           END AS band
    FROM payments
    CROSS JOIN as_of
    WHERE NOT paid
)
SELECT (ARRAY['not yet due', '1-30 days overdue', '31-60 days overdue', '61-90 days overdue',
              'over 90 days overdue'])[band + 1] AS age_band,
       currency_code,
       COUNT(*) AS payments,
       SUM(payment_amount) AS amount,
       MIN(payment_date) AS earliest_agreed_date
FROM aged
GROUP BY band, currency_code
ORDER BY band, currency_code
