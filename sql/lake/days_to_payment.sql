-- The dashboard's "Days to payment" (sql/queries/09_days_to_payment.sql) in Athena's SQL
-- (Trino), unfiltered, over the lake's tables; DuckDB runs it as it is.
-- What changed from the PostgreSQL file, and nothing else:
--   `paid_date - created_date` (PostgreSQL's date subtraction) is date_diff('day', created_date, paid_date),
--   so the averages are doubles (PostgreSQL's are numeric), rounded to one decimal all the same.
WITH payments AS (SELECT f.*, c.currency_code FROM fact_payment_current AS f JOIN dim_currency AS c ON c.currency_id = f.currency_id),
paid_on AS (
    SELECT payments.payment_id, payments.payment_type_id, payments.created_date,
           payments.payment_date, MIN(h.last_updated_date) AS paid_date
    FROM payments
    JOIN fact_payment AS h ON h.payment_id = payments.payment_id AND h.paid
    GROUP BY payments.payment_id, payments.payment_type_id, payments.created_date,
             payments.payment_date
)
SELECT COALESCE(t.payment_type_name, 'all payment types') AS payment_type_name,
       COUNT(*) AS paid_payments,
       ROUND(AVG(date_diff('day', paid_on.created_date, paid_on.paid_date)), 1) AS avg_days_to_payment,
       ROUND(AVG(date_diff('day', paid_on.payment_date, paid_on.paid_date)), 1) AS avg_days_after_agreed_date
FROM paid_on
JOIN dim_payment_type AS t ON t.payment_type_id = paid_on.payment_type_id
GROUP BY GROUPING SETS ((t.payment_type_name), ())
HAVING COUNT(*) > 0
ORDER BY GROUPING(t.payment_type_name), t.payment_type_name
