int main() { return 1; }  // placeholder: the CLI lands with issue 3
