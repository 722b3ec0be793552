"""Export-shaped Llama modules (shallow / adapter / deep) and checkpoint loading."""
