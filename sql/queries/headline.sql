-- Title: Headline numbers
-- Question: How much have we sold, and how much is still owed to or by us?
-- Reading: One row per currency: sales orders and their revenue (latest versions), and the
--   payments whose latest version is unpaid with their total amount.
-- Chart: none
WITH sales AS (
    SELECT s.*, c.currency_code
    FROM fact_sales_order_current AS s
    JOIN dim_currency AS c ON c.currency_id = s.currency_id
    WHERE (CAST(:start_date AS date) IS NULL OR s.created_date >= CAST(:start_date AS date))
      AND (CAST(:end_date AS date) IS NULL OR s.created_date <= CAST(:end_date AS date))
      AND (CAST(:currency AS text) IS NULL OR c.currency_code = CAST(:currency AS text))
),
payments AS (
    SELECT p.*, c.currency_code
    FROM fact_payment_current AS p
    JOIN dim_currency AS c ON c.currency_id = p.currency_id
    WHERE (CAST(:start_date AS date) IS NULL OR p.created_date >= CAST(:start_date AS date))
      AND (CAST(:end_date AS date) IS NULL OR p.created_date <= CAST(:end_date AS date))
      AND (CAST(:currency AS text) IS NULL OR c.currency_code = CAST(:currency AS text))
),
sold AS (
    SELECT currency_code, COUNT(*) AS orders, SUM(units_sold * unit_price) AS revenue
    FROM sales
    GROUP BY currency_code
),
unpaid AS (
    SELECT currency_code, COUNT(*) AS unpaid_payments, SUM(payment_amount) AS unpaid_amount
    FROM payments
    WHERE NOT paid
    GROUP BY currency_code
)
SELECT currency_code,
       COALESCE(sold.orders, 0) AS orders,
       COALESCE(sold.revenue, 0) AS revenue,
       COALESCE(unpaid.unpaid_payments, 0) AS unpaid_payments,
       COALESCE(unpaid.unpaid_amount, 0) AS unpaid_amount
FROM sold
FULL JOIN unpaid USING (currency_code)
ORDER BY currency_code
