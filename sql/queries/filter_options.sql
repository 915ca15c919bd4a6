-- Title: Filter options
-- Question: Which currencies and which span of dates can the page be filtered by?
-- Reading: The currency codes in the warehouse, the first and last order or payment dates, and
--   the sales order whose history the page shows first: the newest amended one, if any.
-- Chart: none
WITH dates AS (
    SELECT created_date FROM fact_sales_order
    UNION ALL
    SELECT created_date FROM fact_purchase_orders
    UNION ALL
    SELECT created_date FROM fact_payment
)
SELECT ARRAY(SELECT currency_code FROM dim_currency ORDER BY currency_code) AS currencies,
       (SELECT MIN(created_date) FROM dates) AS first_date,
       (SELECT MAX(created_date) FROM dates) AS last_date,
       COALESCE((SELECT sales_order_id FROM fact_sales_order
                 GROUP BY sales_order_id HAVING COUNT(*) > 1
                 ORDER BY sales_order_id DESC LIMIT 1),
                (SELECT MAX(sales_order_id) FROM fact_sales_order)) AS example_sales_order_id
