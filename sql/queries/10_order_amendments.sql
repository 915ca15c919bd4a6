-- Title: How often orders are amended
-- Question: How many orders change after they are placed, and how often?
-- Reading: For sales and purchase orders (filtered by their latest version), how many have more
--   than one version in the warehouse's history, the share amended, the amendments in total
--   (versions after the first) and the most versions any one order has.
-- Chart: bar x=amended_pct y=order_kind
\ir filter.psql
WITH sales AS (:filtered_sales),
purchases AS (:filtered_purchases),
versions AS (
    SELECT 'sales order' AS order_kind, 1 AS kind_order, h.sales_order_id AS order_id,
           COUNT(*) AS versions
    FROM fact_sales_order AS h
    JOIN sales USING (sales_order_id)
    GROUP BY h.sales_order_id
    UNION ALL
    SELECT 'purchase order', 2, h.purchase_order_id, COUNT(*)
    FROM fact_purchase_orders AS h
    JOIN purchases USING (purchase_order_id)
    GROUP BY h.purchase_order_id
)
SELECT order_kind,
       COUNT(*) AS orders,
       COUNT(*) FILTER (WHERE versions > 1) AS amended_orders,
       ROUND(100.0 * COUNT(*) FILTER (WHERE versions > 1) / COUNT(*), 2) AS amended_pct,
       SUM(versions - 1) AS amendments,
       MAX(versions) AS max_versions
FROM versions
GROUP BY order_kind, kind_order
ORDER BY kind_order
