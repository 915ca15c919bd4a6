-- Title: Purchases against sales by month
-- Question: Do we sell more than we buy, month by month?
-- Reading: One row per month (of order creation) and currency: sales revenue against purchase
--   spend (item quantity times item unit price) and their difference, from the latest version
--   of each order.
-- Chart: line x=month y=sales_revenue,purchase_spend color=currency_code
\ir filter.psql
WITH sales AS (:filtered_sales),
purchases AS (:filtered_purchases),
sold AS (
    SELECT CAST(date_trunc('month', created_date) AS date) AS month, currency_code,
           COUNT(*) AS sales_orders, SUM(units_sold * unit_price) AS sales_revenue
    FROM sales
    GROUP BY 1, 2
),
bought AS (
    SELECT CAST(date_trunc('month', created_date) AS date) AS month, currency_code,
           COUNT(*) AS purchase_orders, SUM(item_quantity * item_unit_price) AS purchase_spend
    FROM purchases
    GROUP BY 1, 2
)
SELECT month, currency_code,
       COALESCE(sold.sales_orders, 0) AS sales_orders,
       COALESCE(sold.sales_revenue, 0) AS sales_revenue,
       COALESCE(bought.purchase_orders, 0) AS purchase_orders,
       COALESCE(bought.purchase_spend, 0) AS purchase_spend,
       COALESCE(sold.sales_revenue, 0) - COALESCE(bought.purchase_spend, 0) AS difference
FROM sold
FULL JOIN bought USING (month, currency_code)
ORDER BY month, currency_code
