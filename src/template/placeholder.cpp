// placeholder so the target has a source until the template engine lands
namespace lathe::tmpl {}
