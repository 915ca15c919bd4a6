-- Title: Currency mix
-- Question: In which currencies do we trade?
-- Reading: One row per currency: sales and purchase orders (latest version of each) and their
--   value in that currency, and each currency's share of all orders. Shares are of order
--   counts, because amounts in different currencies cannot be added up without exchange rates.
-- Chart: arc theta=orders color=currency_code
\ir filter.psql
WITH sold AS (:sales_by_currency),
purchases AS (:filtered_purchases),
bought AS (
    SELECT currency_code, COUNT(*) AS purchase_orders,
           SUM(item_quantity * item_unit_price) AS purchase_spend
    FROM purchases
    GROUP BY currency_code
),
mix AS (
    SELECT currency_code,
           COALESCE(sold.sales_orders, 0) AS sales_orders,
           COALESCE(sold.sales_revenue, 0) AS sales_revenue,
           COALESCE(bought.purchase_orders, 0) AS purchase_orders,
           COALESCE(bought.purchase_spend, 0) AS purchase_spend
    FROM sold
    FULL JOIN bought USING (currency_code)
)
SELECT mix.currency_code, c.currency_name,
       mix.sales_orders + mix.purchase_orders AS orders,
       ROUND(100.0 * (mix.sales_orders + mix.purchase_orders)
             / SUM(mix.sales_orders + mix.purchase_orders) OVER (), 1) AS share_of_orders_pct,
       mix.sales_orders, mix.sales_revenue, mix.purchase_orders, mix.purchase_spend
FROM mix
JOIN dim_currency AS c ON c.currency_code = mix.currency_code
ORDER BY orders DESC, mix.currency_code
