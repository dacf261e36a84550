// placeholder so the target has a source until the tokenizer lands
namespace lathe::tok {}
