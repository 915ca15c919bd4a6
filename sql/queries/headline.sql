-- Title: Headline numbers
-- Question: How much have we sold, and how much is still owed to or by us?
-- Reading: One row per currency: sales orders and their revenue (latest versions), and the
--   payments whose latest version is unpaid with their total amount.
-- Chart: none
\ir filter.psql
WITH sold AS (:sales_by_currency),
payments AS (:filtered_payments),
unpaid AS (
    SELECT currency_code, COUNT(*) AS unpaid_payments, SUM(payment_amount) AS unpaid_amount
    FROM payments
    WHERE NOT paid
    GROUP BY currency_code
)
SELECT currency_code,
       COALESCE(sold.sales_orders, 0) AS orders,
       COALESCE(sold.sales_revenue, 0) AS revenue,
       COALESCE(unpaid.unpaid_payments, 0) AS unpaid_payments,
       COALESCE(unpaid.unpaid_amount, 0) AS unpaid_amount
FROM sold
FULL JOIN unpaid USING (currency_code)
ORDER BY currency_code
