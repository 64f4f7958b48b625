import csv
from dataclasses import dataclass


@dataclass
class Order:
    customer: str
    item: str
    quantity: int
    unit_price: float


def read_orders(path):
    orders = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            orders.append(Order(row["customer"], row["item"], int(row["quantity"]), float(row["unit_price"])))
    return orders


def total_by_customer(orders):
    totals = {}
    for order in orders:
        total = order.quantity * order.unit_price
        totals[order.customer] = totals.get(order.customer, 0.0) + total
    return totals


def largest_orders(orders, count=3):
    ranked = sorted(orders, key=lambda order: order.quantity * order.unit_price, reverse=True)
    return ranked[:count]


def report(path):
    orders = read_orders(path)
    totals = total_by_customer(orders)
    lines = []
    for customer, total in sorted(totals.items()):
        lines.append(f"{customer}: {total:.2f}")
    lines.append("")
    lines.append("Largest orders:")
    for order in largest_orders(orders):
        total = order.quantity * order.unit_price
        lines.append(f"{order.customer} bought {order.quantity} x {order.item} for {total:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print(report(sys.argv[1]))
