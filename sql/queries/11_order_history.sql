-- Title: The history of one sales order
-- Question: How has this order changed since it was placed?
-- Reading: Every version of the sales order the warehouse has seen, in the order they were
--   captured (oldest first), with the fields that changed from the version before, or 'deleted'
--   for the version recording the order's deletion at the source. Names (design, city, staff)
--   are as they are now.
-- Chart: table
WITH tracked (position, field, label) AS (
    -- The fields whose change the history names, in the order it names them.
    VALUES (1, 'units_sold', 'units sold'), (2, 'unit_price', 'unit price'),
           (3, 'currency_id', 'currency'), (4, 'design_id', 'design'),
           (5, 'agreed_delivery_location_id', 'delivery location'),
           (6, 'agreed_delivery_date', 'delivery date'), (7, 'agreed_payment_date', 'payment date'),
           (8, 'counterparty_id', 'counterparty'), (9, 'sales_staff_id', 'staff')
),
versions AS (
    SELECT f.*, to_jsonb(f) AS fields,
           LAG(to_jsonb(f)) OVER (ORDER BY f.sales_record_id) AS previous_fields
    FROM fact_sales_order AS f
    WHERE f.sales_order_id = CAST(:order_id AS integer)
)
SELECT ROW_NUMBER() OVER (ORDER BY v.sales_record_id) AS version,
       CASE WHEN v.is_deleted THEN 'deleted'
            WHEN v.previous_fields IS NULL THEN 'placed'
            ELSE (SELECT COALESCE(string_agg(t.label, ', ' ORDER BY t.position), '')
                  FROM tracked AS t
                  WHERE v.fields -> t.field IS DISTINCT FROM v.previous_fields -> t.field)
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
ORDER BY version
