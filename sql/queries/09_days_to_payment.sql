-- Title: Days to payment
-- Question: How long do payments take to arrive, and are they on time?
-- Reading: For each payment type (and all together), the payments that have been paid, the
--   average days from the payment's creation to the first version marked paid, and the average
--   days after the agreed payment date (negative: early).
-- Chart: bar x=avg_days_to_payment y=payment_type_name
\ir filter.psql
WITH payments AS (:filtered_payments),
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
       ROUND(AVG(paid_on.paid_date - paid_on.created_date), 1) AS avg_days_to_payment,
       ROUND(AVG(paid_on.paid_date - paid_on.payment_date), 1) AS avg_days_after_agreed_date
FROM paid_on
JOIN dim_payment_type AS t ON t.payment_type_id = paid_on.payment_type_id
GROUP BY GROUPING SETS ((t.payment_type_name), ())
HAVING COUNT(*) > 0
ORDER BY GROUPING(t.payment_type_name), t.payment_type_name
