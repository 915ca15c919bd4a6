-- Title: Revenue by sales staff and department
-- Question: Who sells, and which departments bring the revenue in?
-- Reading: One row per member of staff and currency, with their department as it is now,
--   largest revenue first (latest version of each sales order).
-- Chart: bar x=revenue y=staff_name facet=currency_code
WITH sales AS (
    SELECT s.*, c.currency_code
    FROM fact_sales_order_current AS s
    JOIN dim_currency AS c ON c.currency_id = s.currency_id
    WHERE (CAST(:start_date AS date) IS NULL OR s.created_date >= CAST(:start_date AS date))
      AND (CAST(:end_date AS date) IS NULL OR s.created_date <= CAST(:end_date AS date))
      AND (CAST(:currency AS text) IS NULL OR c.currency_code = CAST(:currency AS text))
)
SELECT st.department_name,
       st.first_name || ' ' || st.last_name AS staff_name,
       s.sales_staff_id AS staff_id,
       s.currency_code,
       COUNT(*) AS orders,
       SUM(s.units_sold * s.unit_price) AS revenue
FROM sales AS s
JOIN dim_staff AS st ON st.staff_id = s.sales_staff_id
GROUP BY st.department_name, st.first_name, st.last_name, s.sales_staff_id, s.currency_code
ORDER BY revenue DESC, staff_id, s.currency_code
