-- Title: Revenue and units by month
-- Question: How much do we sell each month, in orders, units and money?
-- Reading: One row per month (of the order's creation) and currency, from the latest version of
--   each sales order. Revenue is units sold times unit price, in that currency: amounts in
--   different currencies are never added together. Revenue and units are drawn one above the
--   other, each on its own scale.
-- Chart: line x=month panels=revenue,units color=currency_code
\ir filter.psql
WITH sales AS (:filtered_sales)
SELECT CAST(date_trunc('month', created_date) AS date) AS month,
       currency_code,
       COUNT(*) AS orders,
       SUM(units_sold) AS units,
       SUM(units_sold * unit_price) AS revenue
FROM sales
GROUP BY 1, 2
ORDER BY 1, 2
