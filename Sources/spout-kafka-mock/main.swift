// Placeholder: replaced by the mock cluster host.
print("not implemented")
