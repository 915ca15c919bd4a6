-- Title: Revenue and units by month
-- Question: How much do we sell each month, in orders, units and money?
-- Reading: One row per month (of the order's creation) and currency, from the latest version of
--   each sales order. Revenue is units sold times unit price, in that currency: amounts in
--   different currencies are never added together.
-- Chart: line x=month y=revenue color=currency_code
WITH sales AS (
    SELECT s.*, c.currency_code
    FROM fact_sales_order_current AS s
    JOIN dim_currency AS c ON c.currency_id = s.currency_id
    WHERE (CAST(:start_date AS date) IS NULL OR s.created_date >= CAST(:start_date AS date))
      AND (CAST(:end_date AS date) IS NULL OR s.created_date <= CAST(:end_date AS date))
      AND (CAST(:currency AS text) IS NULL OR c.currency_code = CAST(:currency AS text))
)
SELECT CAST(date_trunc('month', created_date) AS date) AS month,
       currency_code,
       COUNT(*) AS orders,
       SUM(units_sold) AS units,
       SUM(units_sold * unit_price) AS revenue
FROM sales
GROUP BY 1, 2
ORDER BY 1, 2
