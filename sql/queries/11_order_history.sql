-- Title: The history of one sales order
-- Question: How has this order changed since it was placed?
-- Reading: Every version of the sales order the warehouse has seen, in the order they were
--   captured (oldest first), with the fields that changed from the version before, or 'deleted'
--   for the version recording the order's deletion at the source. Names (design, city, staff)
--   are as they are now.
-- Chart: table
WITH versions AS (
    SELECT *
    FROM fact_sales_order
    WHERE sales_order_id = CAST(:order_id AS integer)
)
SELECT ROW_NUMBER() OVER w AS version,
       CASE WHEN v.is_deleted THEN 'deleted'
            WHEN LAG(v.sales_record_id) OVER w IS NULL THEN 'placed'
            ELSE concat_ws(', ',
                CASE WHEN v.units_sold IS DISTINCT FROM LAG(v.units_sold) OVER w
                     THEN 'units sold' END,
                CASE WHEN v.unit_price IS DISTINCT FROM LAG(v.unit_price) OVER w
                     THEN 'unit price' END,
                CASE WHEN v.currency_id IS DISTINCT FROM LAG(v.currency_id) OVER w
                     THEN 'currency' END,
                CASE WHEN v.design_id IS DISTINCT FROM LAG(v.design_id) OVER w
                     THEN 'design' END,
                CASE WHEN v.agreed_delivery_location_id
                          IS DISTINCT FROM LAG(v.agreed_delivery_location_id) OVER w
                     THEN 'delivery location' END,
                CASE WHEN v.agreed_delivery_date IS DISTINCT FROM LAG(v.agreed_delivery_date) OVER w
                     THEN 'delivery date' END,
                CASE WHEN v.agreed_payment_date IS DISTINCT FROM LAG(v.agreed_payment_date) OVER w
                     THEN 'payment date' END,
                CASE WHEN v.counterparty_id IS DISTINCT FROM LAG(v.counterparty_id) OVER w
                     THEN 'counterparty' END,
                CASE WHEN v.sales_staff_id IS DISTINCT FROM LAG(v.sales_staff_id) OVER w
                     THEN 'staff' END)
       END AS changed,
       v.last_updated_date, v.last_updated_time,
       v.units_sold, v.unit_price, c.currency_code, v.units_sold * v.unit_price AS order_value,
       d.design_name, l.city AS delivery_city, v.agreed_delivery_date, v.agreed_payment_date,
       cp.counterparty_legal_name, st.first_name || ' ' || st.last_name AS staff_name
FROM versions AS v
JOIN dim_currency AS c ON c.currency_id = v.currency_id
JOIN dim_design AS d ON d.design_id = v.design_id
JOIN dim_location AS l ON l.location_id = v.agreed_delivery_location_id
JOIN dim_counterparty AS cp ON cp.counterparty_id = v.counterparty_id
JOIN dim_staff AS st ON st.staff_id = v.sales_staff_id
WINDOW w AS (ORDER BY v.sales_record_id)
ORDER BY version
